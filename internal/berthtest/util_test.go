package berthtest

import (
	"net"
	"os/exec"
)

func listen(port string) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:"+port) }

// docker runs the docker CLI, for what a user would do by hand next to berth.
func docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	return string(out), err
}
