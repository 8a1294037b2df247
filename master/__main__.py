import sys

from shardmill.cli import main

sys.exit(main(["master", *sys.argv[1:]]))
