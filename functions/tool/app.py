"""tool stage: run the model's tool calls with Baton's safe built-ins, then the next inference."""

from baton.idempotency import stage_config
from baton.parsing import StageCommandRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import tool_stage

settings = get_settings()
tool = tool_stage(settings)

lambda_handler = sqs_stage_handler(
    "tool",
    record_model=StageCommandRecord,
    payload=lambda record: record.body,
    work=lambda command, _context: tool.run(command),
    idempotency=stage_config(settings),
    give_up=tool.failures.ender,
)
