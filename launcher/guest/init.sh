#!/bin/busybox sh
# /init of the DVMS-rs testbed guest (busybox initramfs, no disk, no NIC).
# ttyS0 (console): "GUEST-UP name=<name> up=<s> boot=<boot id>" once, then
#   "TICK <n> up=<s> load=<pct>" every tick (5 s by default: an idle guest costs 0.4 % of
#   a host core at 5 s, 1.2 % at 1 s). Short lines on purpose: under TCG every
#   console byte is a device exit, a syscall and an interrupt (a 70-byte tick line every
#   second cost 7 % of a host core per idle guest; this one about a third of that).
# ttyS1 (host side: a unix socket): one command per line, one answer line each:
#   load <pct>   CPU load inside the guest: a busy loop held to <pct> % by cpulimit
#                (0 = idle, 100 = unlimited busy loop)
#   mem <MiB> <MiB/s>  <MiB> of guest memory (a file in the RAM root) filled with random
#                bytes, then rewritten round and round at <MiB/s> (0: filled once),
#                in the first part of each second; never zero pages, so that a
#                migration must send them (mem 0 0 = stop, memory freed)
#   ping         "pong <uptime> <boot id>"
# Kernel command line: dvms.name= dvms.tick=<ms> dvms.load=<pct> dvms.balloon=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
NAME=guest; TICK=5000; LOAD=0; BALLOON=0
read -r CMDLINE < /proc/cmdline
for kv in $CMDLINE; do
  case "$kv" in
    dvms.name=*) NAME=${kv#dvms.name=} ;;
    dvms.tick=*) TICK=${kv#dvms.tick=} ;;
    dvms.load=*) LOAD=${kv#dvms.load=} ;;
    dvms.balloon=1) BALLOON=1 ;;
  esac
done
# virtio-balloon (memory stats, `virsh setmem`) only on request: verifying the signatures
# of six modules costs about half a second of boot under TCG.
if [ $BALLOON = 1 ]; then
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
  done
fi
read -r BOOT < /proc/sys/kernel/random/boot_id

BUSY=; LIMIT=
set_load() {   # a busy loop, held to $1 % of the vCPU by cpulimit (SIGSTOP/SIGCONT)
  [ -n "$LIMIT" ] && kill $LIMIT 2>/dev/null; [ -n "$BUSY" ] && kill $BUSY 2>/dev/null
  BUSY=; LIMIT=; LOAD=$1
  [ "$1" -gt 0 ] 2>/dev/null || { LOAD=0; echo 0 > /dvms.load; return; }
  [ "$1" -gt 100 ] && LOAD=100
  ( while :; do :; done ) & BUSY=$!
  [ "$LOAD" -lt 100 ] && { cpulimit -q -l "$LOAD" -p $BUSY >/dev/null 2>&1 & LIMIT=$!; }
  echo $LOAD > /dvms.load
}

DIRTY=; MEM=0; RATE=0
# Two 4 MiB blocks of random bytes, written in turn: every pass changes the pages' content
# (what QEMU's dirty-rate sampling sees) and none is a zero page.
write_area() {  # $1 = offset (MiB), $2 = MiB, $3 = which block
  dd if=/dvms.src$3 of=/dvms.mem bs=1048576 count=$2 seek=$1 conv=notrunc 2>/dev/null
}
set_mem() {    # $1 MiB written once, then rewritten at $2 MiB/s, 4 MiB per write
  [ -n "$DIRTY" ] && kill $DIRTY 2>/dev/null; DIRTY=; MEM=0; RATE=0
  rm -f /dvms.mem
  [ "$1" -gt 0 ] 2>/dev/null || return 0
  [ "$2" -ge 0 ] 2>/dev/null || return 0
  MEM=$1; RATE=$2
  for b in 0 1; do
    [ -f /dvms.src$b ] || head -c 4194304 /dev/urandom > /dvms.src$b
  done
  i=0; while [ $i -lt $MEM ]; do
    c=$((MEM - i)); [ $c -gt 4 ] && c=4
    write_area $i $c 0; i=$((i + c))
  done
  [ $RATE -gt 0 ] || return 0
  (
    i=0; pass=1
    while :; do
      read -r a _ < /proc/uptime
      n=$RATE
      while [ $n -gt 0 ]; do
        c=$((MEM - i)); [ $c -gt 4 ] && c=4; [ $c -gt $n ] && c=$n
        write_area $i $c $pass
        i=$((i + c)); n=$((n - c))
        [ $i -ge $MEM ] && { i=0; pass=$((1 - pass)); }
      done
      read -r b _ < /proc/uptime
      left=$(( 100 - (${b%.*}${b#*.} - ${a%.*}${a#*.}) ))   # centiseconds left
      [ $left -gt 0 ] && usleep $((left * 10000))
    done
  ) & DIRTY=$!
}

read -r up _ < /proc/uptime
echo "GUEST-UP name=$NAME up=$up boot=$BOOT"
echo 0 > /dvms.load
if [ -c /dev/ttyS1 ]; then
  (
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    set_load $LOAD
    while :; do
      while read -r cmd arg; do
        case "$cmd" in
          load) set_load "${arg:-0}"; echo "ok load $LOAD" ;;
          mem)  set -- $arg; set_mem "${1:-0}" "${2:-0}"; echo "ok mem $MEM $RATE" ;;
          ping) read -r up _ < /proc/uptime; echo "pong $up $BOOT" ;;
          "")   ;;
          *)    echo "err unknown command: $cmd" ;;
        esac
      done < /dev/ttyS1 > /dev/ttyS1
      sleep 1
    done
  ) &
else
  set_load $LOAD
fi

n=0
while :; do   # builtins only: a fork costs ~1 ms of host CPU under TCG
  read -r up _ < /proc/uptime; read -r l < /dvms.load
  echo "TICK $n up=$up load=$l"
  n=$((n + 1))
  usleep $((TICK * 1000))
done
