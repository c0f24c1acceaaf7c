"""icl experiments: in-context learning of linear regression by linear attention, looped and GPT-2 models."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "icl-linear-attention": "simulations.icl.linear_attention",
    "icl-pgd": "simulations.icl.pgd",
    "icl-task-diversity": "simulations.icl.task_diversity",
    "icl-ltb": "simulations.icl.ltb",
    "icl-task-count": "simulations.icl.task_count",
    "icl-context-vs-task": "simulations.icl.context_vs_task",
    "icl-gpt2": "simulations.icl.gpt2",
    "icl-function-classes": "simulations.icl.function_classes",
    "icl-looped-gpt2": "simulations.icl.looped_gpt2",
}
