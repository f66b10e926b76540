from lm_eval_swift.cli import main


main()
