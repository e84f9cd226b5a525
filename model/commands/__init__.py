"""``tagstream-train`` commands, one module per command group.

    train.py      train: options, then the run as a short list of named steps (train_steps.py)
    evaluate.py   evaluate: score a bundle on labeled data
    use.py        predict and explain: a bundle on new texts
    inspect.py    inspect: what a bundle holds
    distill.py    distill: a small student trained on a teacher bundle's outputs (distill_steps.py)
    common.py     options and helpers shared by several commands

Each module has ``add_parser(subparsers)``; ``model/cli.py`` assembles them and runs one.
"""
