#!/usr/bin/env bash
# Makes the demos' base images without a registry (this machine's Docker
# Engine cannot pull): ansflow-demo/busybox from Debian's busybox-static, and
# ansflow-demo/node:20 from this machine's Node.js and npm plus the shared
# libraries `ldd` names, on top of busybox for a shell.
set -euo pipefail
state=${ANSFLOW_DEMO_DIR:-${TMPDIR:-/tmp}/ansflow-demo}
mkdir -p "$state"

busybox_rootfs() { # DIR
	local dir=$1
	mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root"
	chmod 1777 "$dir/tmp"
	cp "$(command -v busybox)" "$dir/bin/busybox"
	for applet in $("$dir/bin/busybox" --list); do
		[ "$applet" = busybox ] || [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
}

if ! docker image inspect ansflow-demo/busybox:latest >/dev/null 2>&1; then
	echo "making ansflow-demo/busybox:latest" >&2
	rm -rf "$state/busybox" && busybox_rootfs "$state/busybox"
	tar -C "$state/busybox" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - ansflow-demo/busybox:latest >/dev/null
fi

if [ "${1:-}" = node ] && ! docker image inspect ansflow-demo/node:20 >/dev/null 2>&1; then
	node=$(command -v node) || { echo "node is not installed on this machine" >&2; exit 1; }
	echo "making ansflow-demo/node:20 from $node ($("$node" --version))" >&2
	root="$state/node"
	rm -rf "$root" && busybox_rootfs "$root"
	mkdir -p "$root/usr/bin" "$root/usr/lib"
	ln -s /bin/busybox "$root/usr/bin/env"
	cp "$(readlink -f "$node")" "$root/usr/bin/node"
	for lib in $(ldd "$node" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
		mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
	done
	if [ -d /usr/lib/node_modules/npm ]; then
		cp -a /usr/lib/node_modules "$root/usr/lib/"
		ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/bin/npm"
	fi
	tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/bin:/bin' -c 'ENV HOME=/root' -c 'CMD ["node"]' - ansflow-demo/node:20 >/dev/null
fi
