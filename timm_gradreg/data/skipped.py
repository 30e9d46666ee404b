"""Name the file behind timm's "Skipped sample (index N)" warning.

timm's ImageDataset skips an image it cannot decode with a warning that gives the sample's index and
PIL's message, which for a truncated or corrupt file does not name it. ``name_skipped_files(dataset)``
gives an image-folder dataset a subclass that records which dataset is loading, and a filter on
timm's dataset logger appends that dataset's file name for the index to the warning.
"""
import contextvars
import logging
import re

from timm.data import ImageDataset

__all__ = ['name_skipped_files']

_LOADING: contextvars.ContextVar = contextvars.ContextVar('timm_gradreg_loading_dataset', default=None)
_SKIPPED = re.compile(r'Skipped sample \(index (\d+)\)')


class _FileNamingImageDataset(ImageDataset):
    """timm's ImageDataset that lets the skipped-sample filter know which dataset is loading."""

    def __getitem__(self, index):
        token = _LOADING.set(self)
        try:
            return super().__getitem__(index)
        finally:
            _LOADING.reset(token)


class _NameSkippedFile(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        dataset = _LOADING.get()
        match = _SKIPPED.match(str(record.msg))
        if dataset is not None and match and not record.args:
            try:
                name = dataset.filename(int(match.group(1)), absolute=True)
            except Exception:  # a reader without file names: leave timm's message as it is
                return True
            record.msg = f"{record.msg} (file '{name}')"
        return True


_FILTER = _NameSkippedFile()


def name_skipped_files(dataset):
    """``dataset`` (changed in place when it is timm's plain ImageDataset) whose skipped-image warnings name
    the file; other datasets are returned unchanged."""
    if type(dataset) is ImageDataset:
        dataset.__class__ = _FileNamingImageDataset
        logger = logging.getLogger('timm.data.dataset')
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    return dataset
