#!/bin/sh
# Role dispatch for `docker run glmvoice <role> [args...]`; anything else runs as a command.
set -e
role="${1:-orchestrator}"
[ $# -gt 0 ] && shift
case "$role" in
  triton)       exec python -m services.triton "$@" ;;
  orchestrator) exec python -m services.orchestrator "$@" ;;
  gateway)      exec python -m services.gateway "$@" ;;
  train)        exec python -m training.jobs.train "$@" ;;
  evaluate)     exec python -m training.jobs.evaluate "$@" ;;
  promote|rollback) exec glmvoice "$role" "$@" ;;
  *)            exec "$role" "$@" ;;
esac
