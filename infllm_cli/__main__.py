"""``python -m infllm_cli``: the same as the ``infllm`` command."""

from infllm_cli.cli.launch import main

if __name__ == "__main__":
    main()
