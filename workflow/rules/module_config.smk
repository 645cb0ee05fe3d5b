# Read first, before this workflow's `configfile:` (the Snakefile's): used as a module of another workflow, the config
# is the one the module block's `config:` gives (docs/module.md, "As a module of your own workflow").

from snakemake.exceptions import WorkflowError

# A config that is not a mapping (`config: config["fa"]` with `fa: 3`) failed with Python's error naming a line of
# common.smk. One left out, or a key left empty (`fa:`), gives the module no config: Snakemake then reads this
# workflow's config/config.yaml from the host's folder (and stops: not present), or the host's config files over it as
# if they were the module's, whose own keys were said to be unknown, which pointed away from the mistake.
if len(workflow.modifier_stack) > 1:
    _module_named = f"module {getattr(workflow.modifier, 'namespace', None) or 'finetune'}"
    if not isinstance(config, dict):
        _shown = repr(config) if len(repr(config)) <= 80 else repr(config)[:77] + "..."
        raise WorkflowError(f"{_module_named}: its config (the module block's `config:`) is {_shown}, not a mapping "
                            "of this workflow's keys (dataset, weights, train, experiments, ...): give it your config, "
                            "or the key of it that holds the module's settings, `config: config[\"finetune\"]` "
                            "(docs/module.md)")
    if not getattr(workflow.modifier, "skip_configfile", True):
        raise WorkflowError(f"{_module_named}: its module block gives no config (its `config:` is left out, or is a "
                            "key of your config left empty, such as `fa:` with nothing below it), so Snakemake would "
                            "hand it your config files as if they were this workflow's own: give it your config, "
                            "`config: config`, or the key that holds its settings, `config: config[\"finetune\"]` "
                            "(docs/module.md)")
