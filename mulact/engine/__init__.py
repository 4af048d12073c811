"""Training and evaluation: resumable training loop, stage-1 objectives, mIoU."""
from .evaluate import confusion_matrix, evaluate, iou_from_confusion

__all__ = ["confusion_matrix", "evaluate", "iou_from_confusion"]
