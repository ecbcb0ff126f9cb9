// Package egresstest holds the hostile inputs the egress policy is tested
// with, shared by its own tests and the stack's end-to-end ones.
package egresstest

// HostileURLs are repository URLs no request may name when the forge is
// localforge on 127.0.0.1:forgePort; bait is a listener's port.
func HostileURLs(forgePort, bait string) []string {
	return []string{
		"http://127.0.0.1:" + bait + "/o/r.git",
		"https://127.0.0.1:" + bait + "/o/r.git",
		"http://localhost:" + bait + "/o/r.git",
		"http://LOCALHOST:" + bait + "/o/r.git",
		"http://[::1]:" + bait + "/o/r.git",
		"http://[::ffff:127.0.0.1]:" + bait + "/o/r.git",
		"http://0.0.0.0:" + bait + "/o/r.git",
		"http://0:" + bait + "/o/r.git",
		"http://127.1:" + bait + "/o/r.git",
		"http://2130706433:" + bait + "/o/r.git",
		"http://0x7f000001:" + bait + "/o/r.git",
		"http://017700000001:" + bait + "/o/r.git",
		"http://0177.0.0.1:" + bait + "/o/r.git",
		"http://127.0.0.1.nip.io:" + bait + "/o/r.git",
		"http://169.254.169.254/latest/meta-data",
		"http://169.254.169.254:" + bait + "/o/r.git",
		"http://[fd00:ec2::254]/latest/meta-data",
		"http://metadata.google.internal/computeMetadata/v1/",
		"http://github.com/o/r.git",
		"https://github.com/o/r.git",
		"https://attacker.example/o/r.git",
		"https://github.com.attacker.example/o/r.git",
		"http://nats:8222/varz",
		"http://127.0.0.1:8222/varz",
		"file:///etc/passwd",
		"ssh://git@github.com/o/r.git",
		"git://127.0.0.1:" + bait + "/o/r.git",
		"ftp://127.0.0.1:" + bait + "/o/r.git",
		"javascript:alert(1)",
		"/git/leviathan/demo.git",
		"http://x-access-token:abc@127.0.0.1:" + forgePort + "/git/leviathan/demo.git",
		"http://127.0.0.1:" + forgePort + "@127.0.0.1:" + bait + "/o/r.git",
		"http://127.0.0.1:" + bait + "#@127.0.0.1:" + forgePort + "/git/leviathan/demo.git",
		"http://127.0.0.1:" + bait + "?@127.0.0.1:" + forgePort + "/git/leviathan/demo.git",
		"http://127.0.0.1:" + forgePort + "/git/leviathan/demo.git?access_token=abc",
		"http://127.0.0.1:" + forgePort + ".attacker.example/o/r.git",
		"http://127.0.0.1:" + forgePort,
		"https://[::]:" + bait + "/o/r.git",
		// the forge's own address spelled as a DNS name, which a resolver
		// may answer with anything
		"http://127.0.0.1.:" + forgePort + "/git/leviathan/demo.git",
		"http://localhost.:" + forgePort + "/git/leviathan/demo.git",
	}
}
