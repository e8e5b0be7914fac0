"""Everything Slurm, in one place:

    config.py   the experiment's `slurm:` section (SlurmConfig) and its cross-field checks
    sacct.py    live job states from `sacct`, read into cell states
    submit.py   submitit's executor parameters, the job array of a launch, whether a controller answers
    jobs.py     the jobs Slurm runs (one cell, or a pack of cells) on one requeue base: USR2
                checkpoints and requeues, SIGTERM checkpoints and exits
    entry.py    the process Slurm starts for a job, with USR2 held from its first line

config.py and sacct.py import neither torch nor submitit, so experiments and `ablate status` stay light.
This file imports nothing: entry.py's process imports it before it can block USR2.
"""
