# The negotiation test drives real curl (`curl -d`, `curl --json`, as the README's examples).
need_deb /usr/bin/curl curl
