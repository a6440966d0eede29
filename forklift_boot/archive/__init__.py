"""Image tar streams: ``docker save`` and OCI layout streams read into the cache
(``docker_save``, ``oci_layout``), layers stored as blobs (``layer_blobs``) with the fastest gzip
encoder at hand (``gzip_encoders``), load archives written from the cache (``load_archive``) and
layer blobs decoded (``layers``); all of them stream with fixed buffers, so a layer never sits in
memory whole."""
