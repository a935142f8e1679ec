"""Replaying a protocol layer's dialogue under any split of its bytes.

A dialogue is a list of (side, bytes): "C" client bytes, "B" backend bytes
(b"" is EOF), "T" the TLS handshake completing. `replay` feeds each entry cut
at the given points and returns what came out, `normalised` so that two runs
can be compared whatever the chunking.
"""

from itertools import pairwise

from stunnel3.layers.protocol import Close, Log, StartTls, TlsInfo, ToBackend, ToClient

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


def normalised(actions):
    """Bytes per side (the client's cut at StartTls), and the other actions in order."""
    client, backend, control = [b""], b"", []
    for action in actions:
        if isinstance(action, ToClient):
            client[-1] += action.data if action.data else b"<EOF>"
        elif isinstance(action, ToBackend):
            backend += action.data if action.data else b"<EOF>"
        elif isinstance(action, StartTls):
            client.append(b"")
            control.append(action)
        elif isinstance(action, (Close, Log)):
            control.append(action)
    return client, backend, control


def replay(layer, dialogue, cuts):
    """Feed the dialogue to the layer, entry i cut at cuts[i] (taken modulo its length)."""
    actions = layer.start()
    for index, (side, data) in enumerate(dialogue):
        if side == "T":
            actions += layer.tls_started(TLS)
            continue
        feed = layer.feed_client if side == "C" else layer.feed_backend
        if not data:
            actions += feed(b"")
            continue
        points = sorted({cut % (len(data) + 1) for cut in cuts[index]} | {0, len(data)})
        for start, end in pairwise(points):
            actions += feed(data[start:end])
    return normalised(actions)
