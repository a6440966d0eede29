"""Image tar streams: ``docker save`` and OCI layout streams read into the cache
(``docker_save``, ``oci_layout``), load archives written from it (``load_archive``), layer blobs
decoded (``layers``) and gzip written on every core (``gzip``); all of them stream with fixed
buffers, so a layer never sits in memory whole."""
