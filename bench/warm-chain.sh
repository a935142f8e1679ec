#!/bin/sh
# warm-chain.sh HELPER PROGRAM...: start stunnel3-warm on ./warm, the rendezvous that
# stunnel3-setup makes in a service directory (the fronts look there by default), wait
# until it serves, then exec PROGRAM (tcpserver and the users' chain). Both stay in the
# session bench/servers.py started, which stops and charges them together.
helper=$1
shift
mkdir -p -m 700 warm || exit 111
"$helper" -d warm &
tries=0
until [ -f warm/helper ]; do
  kill -0 $! 2>/dev/null || { echo "warm-chain.sh: stunnel3-warm died" >&2; exit 111; }
  tries=$((tries + 1))
  [ $tries -gt 400 ] && { echo "warm-chain.sh: no warm/helper after 20 s" >&2; exit 111; }
  sleep 0.05
done
exec "$@"
