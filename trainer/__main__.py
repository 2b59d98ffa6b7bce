from unsamflow.trainer.cli import main

main()
