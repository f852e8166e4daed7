package trace

import (
	"fmt"
	"os"
)

// mergeHosts writes a hosts file whose entries are those of path followed
// by the host's /etc/hosts, so that path's entries win for the names they
// list (resolvers take the first match). The caller removes the file.
func mergeHosts(path string) (string, error) {
	user, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read --hosts-file %s: %v", path, err)
	}
	system, err := os.ReadFile("/etc/hosts")
	if err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("read /etc/hosts: %v", err)
	}

	f, err := os.CreateTemp("", "childflow-hosts-")
	if err != nil {
		return "", fmt.Errorf("create merged hosts file: %v", err)
	}
	defer f.Close()
	content := fmt.Sprintf("# --hosts-file %s\n%s\n# /etc/hosts\n%s", path, user, system)
	if _, err := f.WriteString(content); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write merged hosts file: %v", err)
	}
	if err := f.Chmod(0o644); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write merged hosts file: %v", err)
	}

	return f.Name(), nil
}
