from maskgit_cli.cli import app

app(prog_name="maskgit")
