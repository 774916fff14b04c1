from quantkit_cli.main import run

run()
