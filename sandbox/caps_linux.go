package sandbox

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// droppedCaps are the capabilities a confined command loses; the package
// documentation says why each.
var droppedCaps = []uintptr{
	unix.CAP_SYS_ADMIN,
	unix.CAP_BPF,
	unix.CAP_PERFMON,
	unix.CAP_NET_ADMIN,
	unix.CAP_NET_RAW,
	unix.CAP_SYS_MODULE,
	unix.CAP_SYS_PTRACE,
	unix.CAP_SYS_RAWIO,
	unix.CAP_SYS_BOOT,
	unix.CAP_DAC_READ_SEARCH,
}

// dropCaps removes droppedCaps from the calling thread's bounding and ambient
// sets (so no exec, set-user-ID root included, regains them) and from its
// effective, permitted and inheritable sets. Capabilities the kernel does not
// know (CAP_BPF and CAP_PERFMON before Linux 5.8) are skipped: whatever they
// cover is then guarded by CAP_SYS_ADMIN.
func dropCaps() error {
	for _, c := range droppedCaps {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0)
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}

		err = unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, c, 0, 0)
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the ambient set: %w", c, err)
		}
	}

	return dropCapSets()
}

// dropCapSets clears droppedCaps in the effective, permitted and inheritable
// sets of the calling thread.
func dropCapSets() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("get capabilities: %w", err)
	}

	for _, c := range droppedCaps {
		d, bit := &data[c/32], uint32(1)<<(c%32)
		d.Effective &^= bit
		d.Permitted &^= bit
		d.Inheritable &^= bit
	}

	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}

	return nil
}
