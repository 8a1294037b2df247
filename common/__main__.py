from shardmill.cli import run

run()
