import sys

from shardmill.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
