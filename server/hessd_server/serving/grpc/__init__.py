"""The gRPC face: servicers that decode and encode, the one status interceptor,
bearer tokens, and reply serialization. Only this part of serving speaks gRPC
to callers; it calls the data plane (:mod:`hessd_server.serving.data_plane`)."""
