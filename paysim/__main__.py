from paysim.cli import main

main()
