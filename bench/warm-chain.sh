#!/bin/sh
# warm-chain.sh SOCKET HELPER PROGRAM...: start stunnel3-warm on SOCKET, wait until it is
# there, then exec PROGRAM (tcpserver and the users' chain) with STUNNEL3_WARM_SOCKET=SOCKET.
# Both stay in the session bench/servers.py started, which stops and charges them together.
sock=$1 helper=$2
shift 2
STUNNEL3_WARM_SOCKET=$sock
export STUNNEL3_WARM_SOCKET
mkdir -p -m 700 "${sock%/*}" || exit 111
"$helper" -s "$sock" &
tries=0
until [ -S "$sock" ]; do
  kill -0 $! 2>/dev/null || { echo "warm-chain.sh: stunnel3-warm died" >&2; exit 111; }
  tries=$((tries + 1))
  [ $tries -gt 400 ] && { echo "warm-chain.sh: no $sock after 20 s" >&2; exit 111; }
  sleep 0.05
done
exec "$@"
