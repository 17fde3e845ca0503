import FBMMCLI
import HeadFast

// The whole fbmm command line (mount, umount, run, stat, migrate, policies),
// with `headfast` registered besides the built-ins. `fbmm-custom mount` starts
// its daemon by re-executing this binary, so the daemon knows `headfast` too.
FBMM.main(policies: [HeadFastPolicy.self])
