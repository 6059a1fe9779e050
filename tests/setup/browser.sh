# The status-page and badge tests: headless Chromium driven by chromedriver.
need_deb /usr/bin/chromium chromium
need_deb /usr/bin/chromedriver chromium-driver
