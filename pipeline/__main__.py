from unsamflow.pipeline.cli import main

main()
