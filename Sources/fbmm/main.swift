import FBMMCLI

FBMM.main()
