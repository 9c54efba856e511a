"""The applications on top of the engine: the `xclip` subcommands (bench, ...)."""
