"""finetune: the library behind the transfer-learning Snakemake workflow.

Scripts under ``workflow/scripts/`` are thin command-line entry points; the logic lives here so
that scripts and tests share it.
"""

__version__ = "0.1.0"
