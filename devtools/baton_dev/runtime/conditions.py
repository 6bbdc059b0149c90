"""CloudFormation's parameter checks and condition functions, evaluated as CloudFormation does.

moto's CloudFormation ignores parameter constraints and `Rules`, and drops an output whose value is
`AWS::NoValue`; the local runtime and the tests use this module instead:

- `resolve_conditionals`: `Fn::If` (and `Ref AWS::NoValue`) resolved against the parameter values,
  so a variable the template leaves unset is unset locally too, never "";
- `parameter_problems`: what CloudFormation would refuse before creating anything (AllowedValues,
  AllowedPattern, Min/MaxValue, Min/MaxLength, then each rule's assertions).
"""

from __future__ import annotations

import re
from typing import Any


class _NoValue:
    """`Ref: AWS::NoValue`: the property (or list item) is removed."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class ConditionError(Exception):
    """A condition or rule uses something this evaluator does not know."""


def parameter_values(cloudformation: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """Every parameter's value: the override, else its default (a missing one stays missing)."""
    values: dict[str, str] = {}
    for name, definition in cloudformation.get("Parameters", {}).items():
        if name in overrides:
            values[name] = str(overrides[name])
        elif "Default" in definition:
            values[name] = _text(definition["Default"])
    return values


def _text(value: Any) -> str:
    return ",".join(_text(item) for item in value) if isinstance(value, list) else str(value)


def _value(expression: Any, values: dict[str, str], conditions: dict[str, Any]) -> Any:
    if isinstance(expression, dict) and len(expression) == 1:
        [(function, argument)] = expression.items()
        if function == "Ref":
            if argument not in values:
                raise ConditionError(f"Ref to {argument!r}: not a parameter with a value")
            return values[argument]
        if function in {"Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition", "Fn::Contains"}:
            return evaluate(expression, values, conditions)
        raise ConditionError(f"{function} is not supported in conditions and rules")
    if isinstance(expression, list):
        return [_value(item, values, conditions) for item in expression]
    return _text(expression)


def evaluate(expression: Any, values: dict[str, str], conditions: dict[str, Any]) -> bool:
    """A condition (or a rule's condition/assertion) as CloudFormation evaluates it."""
    if not isinstance(expression, dict) or len(expression) != 1:
        raise ConditionError(f"not a condition function: {expression!r}")
    [(function, argument)] = expression.items()
    if function == "Condition":
        return evaluate(conditions[argument], values, conditions)
    if function == "Fn::Equals":
        left, right = (_value(item, values, conditions) for item in argument)
        return bool(left == right)
    if function == "Fn::Not":
        return not evaluate(argument[0], values, conditions)
    if function == "Fn::And":
        return all(evaluate(item, values, conditions) for item in argument)
    if function == "Fn::Or":
        return any(evaluate(item, values, conditions) for item in argument)
    if function == "Fn::Contains":
        candidates, needle = (_value(item, values, conditions) for item in argument)
        return bool(needle in candidates)
    raise ConditionError(f"{function} is not supported in conditions and rules")


def resolve_conditionals(value: Any, values: dict[str, str], conditions: dict[str, Any]) -> Any:
    """`value` with every `Fn::If` replaced by its chosen branch; NO_VALUE where CloudFormation
    would remove the property."""
    if isinstance(value, dict):
        if value == {"Ref": "AWS::NoValue"}:
            return NO_VALUE
        if set(value) == {"Fn::If"}:
            name, when_true, when_false = value["Fn::If"]
            chosen = when_true if evaluate({"Condition": name}, values, conditions) else when_false
            return resolve_conditionals(chosen, values, conditions)
        resolved = {key: resolve_conditionals(item, values, conditions) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}
    if isinstance(value, list):
        items = [resolve_conditionals(item, values, conditions) for item in value]
        return [item for item in items if item is not NO_VALUE]
    return value


def parameter_problems(cloudformation: dict[str, Any], overrides: dict[str, str]) -> list[str]:
    """Why CloudFormation would refuse these parameter values (empty: it would accept them)."""
    values = parameter_values(cloudformation, overrides)
    problems: list[str] = []
    for name, definition in cloudformation.get("Parameters", {}).items():
        if name not in values:
            problems.append(f"{name}: a value is required (no default)")
            continue
        problems.extend(f"{name}: {problem}" for problem in _constraint_problems(definition, values[name]))
    if problems:
        return problems  # CloudFormation checks rules only on valid parameters
    conditions = cloudformation.get("Conditions", {})
    for rule_name, rule in cloudformation.get("Rules", {}).items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], values, conditions):
            continue
        for assertion in rule.get("Assertions", []):
            if not evaluate(assertion["Assert"], values, conditions):
                problems.append(f"rule {rule_name}: {assertion.get('AssertDescription', 'assertion failed')}")
    return problems


def _constraint_problems(definition: dict[str, Any], value: str) -> list[str]:
    problems: list[str] = []
    reason = definition.get("ConstraintDescription")
    if "AllowedValues" in definition and value not in [_text(item) for item in definition["AllowedValues"]]:
        problems.append(reason or f"{value!r} is not one of {definition['AllowedValues']}")
    if "AllowedPattern" in definition and re.fullmatch(definition["AllowedPattern"], value) is None:
        problems.append(reason or f"{value!r} does not match {definition['AllowedPattern']}")
    if definition.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return [*problems, f"{value!r} is not a number"]
        if "MinValue" in definition and number < float(definition["MinValue"]):
            problems.append(reason or f"{value} is below MinValue {definition['MinValue']}")
        if "MaxValue" in definition and number > float(definition["MaxValue"]):
            problems.append(reason or f"{value} is above MaxValue {definition['MaxValue']}")
    if "MinLength" in definition and len(value) < int(definition["MinLength"]):
        problems.append(reason or f"shorter than MinLength {definition['MinLength']}")
    if "MaxLength" in definition and len(value) > int(definition["MaxLength"]):
        problems.append(reason or f"longer than MaxLength {definition['MaxLength']}")
    return problems
