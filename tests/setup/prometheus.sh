# The metrics test lints every node's /metrics with promtool and scrapes a mesh with a real
# Prometheus: the package ships both /usr/bin/promtool and /usr/bin/prometheus.
need_deb /usr/bin/promtool prometheus
