from zapfleet.cli import main

main()
