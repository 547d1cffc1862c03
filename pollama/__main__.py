from pollama.cli import main

main()
