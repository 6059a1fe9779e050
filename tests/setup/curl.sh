# The negotiation test drives real curl (`curl -d`, `curl --json`, as the README's examples);
# the HTTPS test drives it over TLS with HTTP/1.1 and HTTP/2 (Debian's curl has nghttp2).
need_deb /usr/bin/curl curl
