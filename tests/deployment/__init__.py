"""The deployment suite: HAProxy before three command-line servers, one killed under load.

Run by ``nox -s deployment`` (which sets ``TYPED_SMTPD_DEPLOYMENT=1``); skipped otherwise. The
network is the suite's own: network namespaces joined by veth pairs where the machine allows it
(root and ``ip`` from iproute2), addresses on the loopback interface (127.0.0.x) where it does not.
"""
