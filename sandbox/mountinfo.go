package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// mountPoints returns the distinct mount points of file system type fstype
// listed in the mountinfo file at path, in the order they appear.
func mountPoints(path, fstype string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()

	points, err := parseMountPoints(f, fstype)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}

	return points, nil
}

// parseMountPoints reads mountinfo lines: id parent major:minor root
// mountpoint options [optional fields...] - fstype source superoptions.
func parseMountPoints(r io.Reader, fstype string) ([]string, error) {
	var points []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != fstype {
			continue
		}

		p := unescapeOctal(fields[4])
		if !slices.Contains(points, p) {
			points = append(points, p)
		}
	}

	return points, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline and
// backslash in mountinfo paths.
func unescapeOctal(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}

	return b.String()
}
