"""Train the 7-layer CNN with BN everywhere on CIFAR-10 with the Python API.

    python examples/train_cnn7.py --data ../shared/data/cifar-10-python.tar.gz --epochs 15
    python examples/train_cnn7.py --data ../shared/data/cifar-10-mini.tar.gz --epochs 1 --limit 512
"""
import argparse

import cybn
from cybn.data import DataLoader, channel_stats, load_cifar10
from cybn.train import Trainer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: download)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training and test images")
    p.add_argument("--out", default="runs/cnn7-bn")
    args = p.parse_args()

    data = load_cifar10(args.data, limit=args.limit)
    mean, std = channel_stats(data.train_images)
    train = DataLoader(data.train_images, data.train_labels, args.batch_size, augment=True, seed=0,
                       mean=mean, std=std)
    test = DataLoader(data.test_images, data.test_labels, 500, shuffle=False, mean=mean, std=std)
    model = cybn.cnn7(bn="all", init="he", seed=0)
    print(model.summary((args.batch_size, 3, 32, 32)))
    optimizer = cybn.SGD(model, lr=args.lr, momentum=0.9, weight_decay=5e-4, decay_bn_and_bias=False)
    schedule = cybn.schedule_from_spec("cosine", args.lr, total_steps=args.epochs * len(train))
    trainer = Trainer(model, cybn.SoftmaxCrossEntropy(), optimizer, schedule=schedule, out_dir=args.out)
    for row in trainer.fit(train, epochs=args.epochs, eval_loader=test):
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
              f"test accuracy {100 * row['test_accuracy']:.2f} %, {row['images_per_s']:.0f} images/s")


if __name__ == "__main__":
    main()
