"""Checkpoint registry and promotion: checkpoints become Triton model versions without failing a request.

registry  records per model in Redis (candidate → evaluated → promoted → retired, with history)
artifacts checkpoint files: the store volume (training output) → the serving volume (Triton reads)
replicas  the Triton servers of a model: a static list, or the pods of a label selector
rollout   one replica at a time: load next to the old version, canary, then unload the old one
canary    one short real inference per model, sent to the new version only
promoter  ties them together: `glmvoice promote` and `glmvoice rollback`
"""
