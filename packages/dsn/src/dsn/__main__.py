"""``python -m dsn``"""
from .cli import main

main(prog_name="dsn")
