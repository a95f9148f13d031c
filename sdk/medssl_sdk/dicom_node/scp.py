"""The listening side: a pynetdicom Application Entity answering C-ECHO and C-STORE of CT and MR images.

- Association requests are refused (A-ASSOCIATE-RJ, transient) while the spool's free space is below the
  watermark; a C-STORE arriving then is answered 0xA700 (out of resources).
- Presentation contexts are accepted for every storage SOP class (modalities and PACS forwarding rules
  propose them all) and Verification; a C-STORE of anything but CT or MR Image Storage (reports,
  presentation states, SEG, ...) is answered 0x0122 (SOP class not supported) and logged.
- Each instance is written to the spool durably before the success status goes back. A data set that
  cannot be decoded or lacks its UIDs is answered 0xC210 (cannot understand) and logged by its SOP class.

Log lines carry AE titles, UIDs and counts, never patient names, IDs or birth dates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from medssl_sdk.dicom_node.spool import Spool, SpoolError
from medssl_sdk.io.dicom_files import frame_count

LOG = logging.getLogger("medssl.dicom_node.scp")

#: Storage SOP classes accepted (single-frame cross-sectional images the series reader handles).
IMAGE_STORAGE_CLASSES = (CTImageStorage, MRImageStorage)

#: Transfer syntaxes accepted when pydicom can decode them here (uncompressed and RLE always can).
CANDIDATE_TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122

#: A-ASSOCIATE-RJ: rejected-transient (0x02), by the service user (0x01), no reason given (0x01).
_REJECT_TRANSIENT = (0x02, 0x01, 0x01)


def accepted_transfer_syntaxes() -> list[str]:
    """The candidates pydicom can decode in this environment (so a stored image can later be read)."""
    return [
        syntax for syntax in CANDIDATE_TRANSFER_SYNTAXES if not uid.UID(syntax).is_compressed or get_decoder(syntax).is_available
    ]


class StorageSCP:
    """Receives instances into ``spool`` and calls ``on_instance(study_uid, series_uid)`` after each is durable.

    Args:
        spool: where instances go.
        ae_title: our AE title (the called AE title is not enforced).
        min_free_mb: free-space watermark of the spool's file system.
        max_associations: concurrent associations.
        on_instance: called from the association's thread once an instance is on disk.
    """

    def __init__(
        self,
        spool: Spool,
        ae_title: str,
        min_free_mb: float,
        max_associations: int,
        on_instance: Callable[[str, str], None],
    ) -> None:
        self.spool = spool
        self.min_free_mb = min_free_mb
        self.on_instance = on_instance
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        syntaxes = accepted_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        self.ae.add_supported_context(Verification)
        self._server = None

    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` in background threads."""
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)
        LOG.info("listening as %s on %s:%d", self.ae.ae_title, host, port)

    def stop(self) -> None:
        """Stop accepting and close the listening socket (running associations are aborted)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def disk_is_low(self) -> bool:
        return self.spool.free_mb() < self.min_free_mb

    def _on_requested(self, event: Event) -> None:
        if self.disk_is_low():
            LOG.warning(
                "refused association from %s: spool free space %.0f MiB is below the watermark min_free_mb %.0f",
                _calling(event), self.spool.free_mb(), self.min_free_mb,
            )
            event.assoc.acse.send_reject(*_REJECT_TRANSIENT)
            event.assoc.kill()  # as pynetdicom's own rejections do: the DUL sends the A-ASSOCIATE-RJ, then stops

    def _on_accepted(self, event: Event) -> None:
        refused = sorted({uid.UID(context.abstract_syntax).name for context in event.assoc.rejected_contexts})
        if refused:
            LOG.info("association from %s: refused presentation contexts for %s", _calling(event), ", ".join(refused))

    def _on_store(self, event: Event) -> int:
        sop_class = uid.UID(event.request.AffectedSOPClassUID).name
        if event.request.AffectedSOPClassUID not in IMAGE_STORAGE_CLASSES:
            LOG.warning(
                "rejected a %s from %s: not an image SOP class this node processes (it stores %s)",
                sop_class, _calling(event), ", ".join(uid.UID(sop).name for sop in IMAGE_STORAGE_CLASSES),
            )
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        if self.disk_is_low():
            LOG.warning("C-STORE of a %s from %s answered out of resources: spool below its watermark", sop_class, _calling(event))
            return STATUS_OUT_OF_RESOURCES
        try:
            dataset = event.dataset
            _check_pixel_data(dataset, uid.UID(event.context.transfer_syntax))
            study_uid, series_uid = str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))
            self.spool.store(event.encoded_dataset(), study_uid, series_uid, str(event.request.AffectedSOPInstanceUID))
        except SpoolError as error:
            LOG.warning("rejected a %s from %s: %s", sop_class, _calling(event), error)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as error:
            LOG.error("could not store a %s from %s: %s", sop_class, _calling(event), error.strerror or type(error).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception as error:  # decoding a damaged data set raises many types; never echo its content
            LOG.warning(
                "rejected a %s from %s: the data set cannot be decoded (%s)", sop_class, _calling(event), type(error).__name__
            )
            return STATUS_CANNOT_UNDERSTAND
        self.on_instance(study_uid, series_uid)
        return STATUS_SUCCESS


def _check_pixel_data(dataset: Dataset, transfer_syntax: uid.UID) -> None:
    """Raise SpoolError unless ``dataset`` has pixel data of the size its image attributes promise (uncompressed)."""
    if "PixelData" not in dataset:
        raise SpoolError("the data set has no PixelData")
    if transfer_syntax.is_compressed:
        return  # encapsulated fragments: checked when decoded
    shape = (dataset.get("Rows", 0), dataset.get("Columns", 0), dataset.get("SamplesPerPixel", 1), frame_count(dataset))
    expected = int(np.prod(shape, dtype=np.int64)) * int(dataset.get("BitsAllocated", 16)) // 8
    actual = len(dataset.PixelData)
    if actual not in (expected, expected + 1):  # + 1: an odd length is padded
        raise SpoolError(f"the data set's PixelData holds {actual} bytes; Rows, Columns, frames and BitsAllocated need {expected}")


def _calling(event: Event) -> str:
    """The peer as ``AE@address`` for log lines."""
    requestor = event.assoc.requestor
    title = requestor.primitive.calling_ae_title if requestor.primitive is not None else requestor.ae_title
    return f"{str(title).strip()}@{requestor.address}"
