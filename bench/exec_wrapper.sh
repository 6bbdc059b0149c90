#!/bin/sh
# AWS_LAMBDA_EXEC_WRAPPER of the bench's function processes. Lambda runs a wrapper with the
# runtime's command line ("$@": python -S -s -m awslambdaric <handler>); this one runs the same
# interpreter, flags and handler through bench/function_hook.py, which records AWS calls and
# invocations inside the process, then starts awslambdaric.
python="$1"
for handler; do :; done
exec "$python" -S -s "$(dirname "$0")/function_hook.py" "$handler"
