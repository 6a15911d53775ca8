"""gcp-storage-emulator as the tests run it: `python tests/gcs_emulator.py start ...` takes
the emulator's own arguments.

Real Cloud Storage answers a media download with the object's generation in the
`x-goog-generation` header (and `x-goog-metageneration`). The emulator leaves them out, and
tensorstore, the gs:// driver under Orbax's checkpoints, reads the generation from that header
for the conditional writes that commit a checkpoint. This adds the two headers to the emulator's
download handler, with the values it already keeps for each object, and changes nothing else.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download  # objects.get serves ?alt=media through it
server.HANDLERS = tuple(
    (pattern, {method: download if f is _download else f for method, f in methods.items()})
    for pattern, methods in server.HANDLERS
)

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
