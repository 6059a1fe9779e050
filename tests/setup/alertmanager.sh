# The Alertmanager receiver test drives a real Alertmanager.
need_deb /usr/bin/prometheus-alertmanager prometheus-alertmanager
