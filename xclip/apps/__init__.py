"""The applications: the ``xclip`` command (:mod:`xclip.apps.cli`) and its subcommands.

``train``, ``eval``, ``predict``, ``convert``, ``demo`` (:mod:`xclip.apps.demo`) and
``bench``. Each subcommand module has ``main(argv) -> exit status``.
"""
