#!/bin/sh
# The cheap SMTP server behind every server under test: a greeting, a
# multi-line EHLO reply with PIPELINING, MAIL/RCPT/DATA/RSET/NOOP/QUIT. dash
# builtins only, so a session costs about one fork+exec and a few syscalls
# (exim spends ~200 ms per session on its own and would drown the difference).
cr=$(printf '\r')
printf '220 bench.invalid ESMTP\r\n'
while IFS= read -r line; do
  case $line in
  [Ee][Hh][Ll][Oo]*) printf '250-bench.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n' ;;
  [Hh][Ee][Ll][Oo]*) printf '250 bench.invalid\r\n' ;;
  [Mm][Aa][Ii][Ll]* | [Rr][Cc][Pp][Tt]* | [Rr][Ss][Ee][Tt]* | [Nn][Oo][Oo][Pp]*) printf '250 2.0.0 ok\r\n' ;;
  [Dd][Aa][Tt][Aa]*)
    printf '354 go ahead\r\n'
    while IFS= read -r line; do
      [ "$line" = ".$cr" ] || [ "$line" = . ] && break
    done
    printf '250 2.0.0 accepted\r\n'
    ;;
  [Qq][Uu][Ii][Tt]*)
    printf '221 2.0.0 bye\r\n'
    exit 0
    ;;
  *) printf '502 5.5.2 not implemented\r\n' ;;
  esac
done
