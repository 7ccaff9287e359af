from toklip.cli import main

main()
