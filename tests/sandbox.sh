#!/bin/sh
# sandbox.sh DIR PROGRAM [ARG...]: run PROGRAM with DIR's files in place of the
# machine's, in the private mount namespace `unshare -m` gave this shell (the
# caller: unshare -m --propagation private sh sandbox.sh DIR ...). Nothing of the
# machine is changed: every mount here dies with the namespace.
#   /dev/log          <- DIR/log.sock (a syslog daemon the test started), in a
#                        fresh /dev that links everything else to the real one
#   /etc/hosts.allow, /etc/hosts.deny, /etc/hosts, /etc/resolv.conf
#                     <- DIR's files of the same names (bind mounts): TCP
#                        wrappers' rules, and names that resolve (or fail) at
#                        once, never through the machine's DNS
#   each file of $SANDBOX_HIDE <- an empty file
set -eu
dir=$1
shift
mkdir -p "$dir/dev.real"
mount --rbind /dev "$dir/dev.real"
mount -t tmpfs -o mode=755,size=64k sandbox-dev /dev
mkdir /dev/.real
mount --move "$dir/dev.real" /dev/.real  # where every account can reach it
ln -s /dev/.real/* /dev/
rm -f /dev/log
: > /dev/log
mount --bind "$dir/log.sock" /dev/log
for name in hosts.allow hosts.deny; do  # libwrap0 installs both
  [ -e "/etc/$name" ] || { echo "sandbox.sh: /etc/$name is missing: nothing to mount over" >&2; exit 111; }
  mount --bind "$dir/$name" "/etc/$name"
done
for name in hosts resolv.conf; do  # without resolv.conf glibc asks 127.0.0.1 anyway
  [ ! -e "/etc/$name" ] || mount --bind "$dir/$name" "/etc/$name"
done
for path in ${SANDBOX_HIDE:-}; do  # e.g. a library, to see the program do without it
  : > "$dir/hidden"
  mount --bind "$dir/hidden" "$path"
done
unset SANDBOX_HIDE
exec "$@"
