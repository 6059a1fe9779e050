# The chaos test runs nodes in network namespaces and skews a node's clock; it needs root
# (it says so and skips otherwise), so only root needs its tools.
if [ "$(id -u)" = 0 ]; then
  need_deb /usr/sbin/ip iproute2
  need_deb '/usr/lib/*/faketime/libfaketimeMT.so.1' libfaketime
fi
